// Anchors the library when no CPU variant is compiled in yet.
