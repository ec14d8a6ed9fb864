"""Tests of the forecast client (forecast/)."""
