package android.graphics

/**
 * The part of Android's `Bitmap` that `edgeresPixels` uses, for compiling it on the JVM: an
 * ARGB_8888 image whose `getPixels` copies packed `0xAARRGGBB` ints the way Android's does.
 */
class Bitmap(val width: Int, val height: Int, private val argb: IntArray) {
    init {
        require(argb.size == width * height) { "argb has ${argb.size} pixels, expected ${width * height}" }
    }

    fun getPixels(pixels: IntArray, offset: Int, stride: Int, x: Int, y: Int, width: Int, height: Int) {
        require(x >= 0 && y >= 0 && x + width <= this.width && y + height <= this.height) { "rectangle outside the bitmap" }
        for (row in 0 until height) {
            System.arraycopy(argb, (y + row) * this.width + x, pixels, offset + row * stride, width)
        }
    }
}
