"""Executed tool-call traces (``type: tool-use``): a spec's tools, checked and run for real."""
