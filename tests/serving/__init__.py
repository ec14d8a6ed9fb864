"""Tests of the ModelServer, the version store and serving.sync (serving/)."""
