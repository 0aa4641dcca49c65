"""After a run: the command line (mapmerge summary, status, select, plot, check) and the run folder read back."""
