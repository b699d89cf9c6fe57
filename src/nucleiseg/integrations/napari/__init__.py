"""The napari plugin (`pip install 'nucleiseg[napari]'`): a reader for images and for
`*_labels.tif` outputs, the bundled test images as sample data, and the 'Segment nuclei'
widget. Declared in napari.yaml (npe2); napari and Qt are imported only here, never by the
rest of nucleiseg."""
