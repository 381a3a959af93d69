"""The reverse proxy: origin choice, origin health and the header rules of each hop, kept pure so they test alone."""
