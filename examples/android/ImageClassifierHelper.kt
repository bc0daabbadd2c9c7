package com.example.edgeres

import android.content.Context
import android.graphics.Bitmap
import com.google.mediapipe.framework.image.BitmapImageBuilder
import com.google.mediapipe.tasks.core.BaseOptions
import com.google.mediapipe.tasks.vision.core.RunningMode
import com.google.mediapipe.tasks.vision.imageclassifier.ImageClassifier

/**
 * Classifies a [Bitmap] with an edgeres `model_int8.tflite` placed in `app/src/main/assets/`.
 *
 * MediaPipe reads the input size and the category names from the metadata that edgeres embeds
 * in the model, stretches the whole image to the input size with exactly edgeres's resize rule
 * (MediaPipe's CPU resize is the rule), feeds uint8 pixels and dequantizes the uint8 scores.
 * No labels file, no preprocessing code here; [edgeresPixels] is for apps that skip MediaPipe.
 */
class ImageClassifierHelper(context: Context, maxResults: Int = 2) : AutoCloseable {

    data class Label(val name: String, val score: Float)

    private val classifier: ImageClassifier = ImageClassifier.createFromOptions(
        context,
        ImageClassifier.ImageClassifierOptions.builder()
            .setBaseOptions(BaseOptions.builder().setModelAssetPath(MODEL_ASSET).build())
            .setMaxResults(maxResults)
            .setRunningMode(RunningMode.IMAGE)
            .build(),
    )

    /**
     * Best first. Blocks while the model runs: call it off the main thread. An empty list means
     * "not sure": the top score is below the uncertain band edgeres measured and wrote into the
     * model's metadata (ScoreThresholdingOptions), where another phone may answer differently.
     * To get every answer anyway, add `.setScoreThreshold(1e-9f)` to the options above (a value
     * above 0: MediaPipe's Python API, at least, reads 0 as unset and keeps the model's band).
     */
    fun classify(bitmap: Bitmap): List<Label> {
        // MediaPipe takes ARGB_8888 only; decoders may hand out RGB_565 or HARDWARE bitmaps.
        val argb = if (bitmap.config == Bitmap.Config.ARGB_8888) bitmap
                   else bitmap.copy(Bitmap.Config.ARGB_8888, false)
        val result = classifier.classify(BitmapImageBuilder(argb).build())
        return result.classificationResult().classifications()[0].categories()
            .map { Label(it.categoryName(), it.score()) }
    }

    override fun close() = classifier.close()

    companion object {
        const val MODEL_ASSET = "model_int8.tflite"

        /**
         * The model input edgeres validated, for an app that feeds LiteRT's Interpreter itself
         * instead of going through MediaPipe: RGB bytes `[outH, outW, 3]` made by edgeres's resize
         * rule (MediaPipe's own). Do not use `Bitmap.createScaledBitmap`: its filtering is not this.
         * Output pixel (x, y) samples source (x * w / outW, y * h / outH), corners aligned, rounded
         * to 1/32 pixel (halves up); integer weights (32 - fx) * (32 - fy) ... summing to 1024, rounded half up.
         */
        fun edgeresPixels(bitmap: Bitmap, outW: Int, outH: Int): ByteArray {
            val w = bitmap.width
            val h = bitmap.height
            val argb = IntArray(w * h)
            bitmap.getPixels(argb, 0, w, 0, 0, w, h)
            fun axis(nOut: Int, nIn: Int): Triple<IntArray, IntArray, IntArray> {
                val i0 = IntArray(nOut); val i1 = IntArray(nOut); val f = IntArray(nOut)
                for (i in 0 until nOut) {
                    val pos = ((64L * i * nIn + nOut) / (2L * nOut)).toInt()  // 32 * i * nIn / nOut, halves up
                    i0[i] = minOf(pos shr 5, nIn - 1); i1[i] = minOf((pos shr 5) + 1, nIn - 1); f[i] = pos and 31
                }
                return Triple(i0, i1, f)
            }
            val (y0, y1, fy) = axis(outH, h)
            val (x0, x1, fx) = axis(outW, w)
            val out = ByteArray(outW * outH * 3)
            for (y in 0 until outH) for (x in 0 until outW) for (c in 0 until 3) {
                val shift = 16 - 8 * c  // R, G, B in ARGB
                fun px(yy: Int, xx: Int) = (argb[yy * w + xx] shr shift) and 0xFF
                val top = px(y0[y], x0[x]) * (32 - fx[x]) + px(y0[y], x1[x]) * fx[x]
                val bottom = px(y1[y], x0[x]) * (32 - fx[x]) + px(y1[y], x1[x]) * fx[x]
                out[(y * outW + x) * 3 + c] = ((top * (32 - fy[y]) + bottom * fy[y] + 512) shr 10).toByte()
            }
            return out
        }
    }
}
