"""A small application to test as it is: a summariser with its own openai clients.

It knows nothing of pytest-llmexp. Its sync client is made at import, as applications make
them; its batch function gathers async calls. The experiment beside it
(``test_summariser.py``) measures it without touching pytest-llmexp's bots, and every call it
makes is recorded in the run that made it.

``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` decide where it calls, as for any openai client;
under pytest with no key and no endpoint set, the session lends it the embedded model.
"""

import asyncio
import os

from openai import AsyncOpenAI, OpenAI

MODEL = os.environ.get("SUMMARISER_MODEL", "gpt-4o-mini")
INSTRUCTIONS = "Summarise the user's text in one short sentence."

client = OpenAI()  # made at import


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": text}]


def summarise(text: str) -> str:
    """One text's summary."""
    reply = client.chat.completions.create(
        model=MODEL, messages=_messages(text), max_tokens=40, temperature=0.2
    )
    return reply.choices[0].message.content or ""


async def summarise_all(texts: list[str]) -> list[str]:
    """Every text's summary, asked for at once."""
    async with AsyncOpenAI() as aclient:
        replies = await asyncio.gather(
            *(
                aclient.chat.completions.create(
                    model=MODEL, messages=_messages(text), max_tokens=40, temperature=0.2
                )
                for text in texts
            )
        )
    return [reply.choices[0].message.content or "" for reply in replies]
