"""lisegagr: the command line and application layer over `lisegagr_core`."""
