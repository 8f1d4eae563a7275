"""The torch-free data layer: the Twitch log format, availability, the time split."""
