"""Multi-turn chat sessions, closed loop: each turn resends the whole history (system prompt,
earlier user turns and the replies actually generated), and a turn is sent only when the previous
reply has ended.

A session holds what the user will say; the replies come from whatever engine runs it, so a
driver asks ``session.prompt(turn, replies)`` for the next prompt once the previous turn finished.

Examples:
    >>> s = chat_sessions(1, turns=3, seed=0, system_tokens=8)[0]
    >>> p0 = s.prompt(0, [])
    >>> p1 = s.prompt(1, [[7, 7, 7]])            # the reply generated for turn 0
    >>> p1[:len(p0)] == p0 and p1[len(p0):len(p0) + 3] == [7, 7, 7]
    True
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kvlab.workloads.synthetic import (
    SHAREGPT_OUTPUT_MU,
    SHAREGPT_OUTPUT_SIGMA,
    SHAREGPT_PROMPT_MU,
    SyntheticRequest,
)


@dataclasses.dataclass(frozen=True)
class ChatSession:
    """system: [S] token ids; user_turns: each turn's new user tokens; reply_tokens: each turn's
    ``max_tokens``."""

    system: list[int]
    user_turns: list[list[int]]
    reply_tokens: list[int]

    @property
    def num_turns(self) -> int:
        return len(self.user_turns)

    def prompt(self, turn: int, replies: list[list[int]]) -> list[int]:
        """The prompt of ``turn``: system + (user_i + reply_i for earlier turns) + user_turn."""
        if not 0 <= turn < self.num_turns:
            raise ValueError(f"turn must be in [0, {self.num_turns}), got {turn}")
        if len(replies) != turn:
            raise ValueError(f"turn {turn} needs the {turn} earlier replies, got {len(replies)}")
        out = list(self.system)
        for user, reply in zip(self.user_turns, replies):
            out += user + list(reply)
        return out + self.user_turns[turn]

    def fit(self, max_tokens: int) -> ChatSession:
        """The session ended at the last turn whose prompt and reply fit in ``max_tokens`` (a chat
        whose context is full ends there); at least the first turn, which must fit."""
        total, keep = len(self.system), 0
        for user, reply in zip(self.user_turns, self.reply_tokens):
            total += len(user) + reply
            if total > max_tokens:
                break
            keep += 1
        if keep == 0:
            raise ValueError(f"the first turn needs {len(self.system) + len(self.user_turns[0])} + "
                             f"{self.reply_tokens[0]} tokens, over max_tokens={max_tokens}")
        return ChatSession(self.system, self.user_turns[:keep], self.reply_tokens[:keep])

    def request(self, turn: int, replies: list[list[int]], arrival: float = 0.0) -> SyntheticRequest:
        return SyntheticRequest(self.prompt(turn, replies), self.reply_tokens[turn], arrival,
                                tag=f"turn{turn}")


def chat_sessions(n: int, *, turns: int | tuple[int, int] = (2, 6), system_tokens: int = 128, seed: int = 0,
                  vocab_size: int = 32000, max_user_tokens: int = 512, max_reply_tokens: int = 512
                  ) -> list[ChatSession]:
    """``n`` sessions; ``turns`` fixed or drawn uniformly from an inclusive range; user turns and
    replies with ShareGPT-like lognormal lengths (user turns shorter: a follow-up, not a first
    prompt), capped at the given maxima."""
    rng = np.random.default_rng(seed)
    lo, hi = (turns, turns) if isinstance(turns, int) else turns
    if lo < 1 or hi < lo:
        raise ValueError(f"turns must be >= 1 (or a range lo <= hi), got {turns}")
    sessions = []
    for _ in range(n):
        k = int(rng.integers(lo, hi + 1))
        users = [rng.integers(3, vocab_size, int(np.clip(rng.lognormal(SHAREGPT_PROMPT_MU - 0.7, 1.0), 4,
                                                         max_user_tokens))).tolist() for _ in range(k)]
        replies = [int(np.clip(rng.lognormal(SHAREGPT_OUTPUT_MU, SHAREGPT_OUTPUT_SIGMA), 4, max_reply_tokens))
                   for _ in range(k)]
        sessions.append(ChatSession(rng.integers(3, vocab_size, system_tokens).tolist(), users, replies))
    return sessions
