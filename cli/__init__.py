"""Thin Typer front end for capsule, installed as ``capsule_cli``."""
