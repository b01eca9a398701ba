// Anchors the library when no CUDA source is compiled for simt yet.
