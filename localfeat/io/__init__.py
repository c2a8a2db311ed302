"""Reading and writing: images, HDF5 feature/match stores, per-image npz formats, COLMAP."""
