"""Tests of the pipeline's stages and library modules (pipeline/)."""
