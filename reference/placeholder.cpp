// Anchors the library before the first reference lands; removed once one does.
