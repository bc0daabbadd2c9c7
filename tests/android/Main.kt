import android.graphics.Bitmap
import java.io.BufferedInputStream
import java.io.BufferedOutputStream
import java.io.DataInputStream
import java.io.EOFException

/**
 * Reads jobs on stdin until it ends: four big-endian ints (w, h, outW, outH), then w * h * 3 RGB
 * bytes (a decoded photo); writes outW * outH * 3 bytes per job on stdout: edgeresPixels's answer.
 */
fun main(args: Array<String>) {
    val input = DataInputStream(BufferedInputStream(System.`in`))
    val output = BufferedOutputStream(System.out)
    while (true) {
        val w = try { input.readInt() } catch (e: EOFException) { break }
        val h = input.readInt()
        val outW = input.readInt()
        val outH = input.readInt()
        val rgb = ByteArray(w * h * 3)
        input.readFully(rgb)
        val argb = IntArray(w * h) { i ->
            val r = rgb[3 * i].toInt() and 0xFF
            val g = rgb[3 * i + 1].toInt() and 0xFF
            val b = rgb[3 * i + 2].toInt() and 0xFF
            (0xFF shl 24) or (r shl 16) or (g shl 8) or b
        }
        output.write(edgeresPixels(Bitmap(w, h, argb), outW, outH))
    }
    output.flush()
}
