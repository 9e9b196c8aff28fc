"""Documents kept whole (scorer configurations, SLO files): checked at once, held and followed."""
