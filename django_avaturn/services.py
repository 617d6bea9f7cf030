"""Starting, ending and speaking to sessions from your own code: the functions the docs show.

The lifecycle itself lives in ``django_avaturn.sessions``; this module only
names its public entry points.
"""

from django_avaturn.sessions.ending import abandon_start, end_session, end_sessions
from django_avaturn.sessions.speech import say
from django_avaturn.sessions.starting import StartedSession, start_session

__all__ = [
    "StartedSession",
    "abandon_start",
    "end_session",
    "end_sessions",
    "say",
    "start_session",
]
