"""The bottom layer: the event contract, the settings object and the time base.

Imported by every other layer; imports nothing of liverank and nothing heavy (msgspec,
pydantic).
"""
