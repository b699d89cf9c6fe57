"""What plugs nucleiseg into other tools: Dask clusters and napari."""
