"""Ray Data batch scoring of mask predictions; metrics over wanted/unwanted word sets."""
