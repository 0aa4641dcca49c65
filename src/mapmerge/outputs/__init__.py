"""What a run shows: plots and the HTML tables of the report."""
