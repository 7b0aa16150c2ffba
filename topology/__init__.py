"""The spillway pipeline: the one Faust app, its channels, wiring, settings, views and commands."""
