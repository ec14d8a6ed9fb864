"""Tests of the application side (forecast/): the forecast client's commands and the forecast archive."""
