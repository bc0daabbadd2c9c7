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
 * in the model, stretches the whole image to the input size (no crop, as edgeres trains), feeds
 * uint8 pixels and dequantizes the uint8 scores. No labels file, no preprocessing code here.
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

    /** Best first. Blocks while the model runs: call it off the main thread. */
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
    }
}
