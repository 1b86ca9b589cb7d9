"""The HTTP routes, one router per concern: `openai` (/v1), `admin` (/admin), `health`."""
