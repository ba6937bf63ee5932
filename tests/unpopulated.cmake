# UnpopulatedFinder (issue 13): which pages the source may skip without
# reading them, on anonymous memory (PAGEMAP_SCAN / pagemap) and on a memfd
# (SEEK_HOLE), with and without a uffd-wp tracker running.
ferry_test(unpopulated_test unit unpopulated_test.cc LIBS ferry_core)
