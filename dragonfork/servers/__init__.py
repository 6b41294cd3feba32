"""Protocol services, one folder each (``whep/`` first): signalling, session table, caps, read model.

A service asks a ``Stream`` of the hub to start its readers (in the stream's nursery); it owns sessions, not
reader tasks. HTTP routes call a service's small API and never wire objects together themselves.
"""
