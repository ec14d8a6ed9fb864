"""Tests of the version store (serving/store/)."""
