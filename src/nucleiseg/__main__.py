from nucleiseg.cli import main

if __name__ == "__main__":  # not again in worker processes (multiprocessing, Dask)
    raise SystemExit(main())
