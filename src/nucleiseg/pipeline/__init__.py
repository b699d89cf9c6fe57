"""`nucleiseg predict` as a library: output paths and files, one file end to end, and runs over
many files (one after the other, overlapped, or on a Dask cluster)."""
