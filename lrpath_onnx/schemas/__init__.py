"""JSON Schemas of the files lrpath writes (package data)."""
