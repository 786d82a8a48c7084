/* stb_image_impl.c — stb_image's implementation, compiled into the fuzz targets with the fuzzer's
 * instrumentation and sanitizers (the library build links the system libstb instead). */
#define STB_IMAGE_IMPLEMENTATION
#include <stb/stb_image.h>
