"""Multi-view captures and NeRF: readers, models, training and rendering."""
