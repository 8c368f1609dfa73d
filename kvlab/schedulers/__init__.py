"""Schedulers: which sequences run each step, and how many tokens each computes."""

from kvlab.schedulers.admission import OptimisticAdmission, ReserveAdmission, StaticBatchAdmission
from kvlab.schedulers.base import ScheduledSeq, Scheduler, StepOutput, StepPlan
from kvlab.schedulers.chunked import ChunkedScheduler
from kvlab.schedulers.continuous import ContinuousScheduler
from kvlab.schedulers.iteration import IterationScheduler
from kvlab.schedulers.persistent import PersistentScheduler
from kvlab.schedulers.policies import FCFS, LongestPrefixMatch, Priority, ShortestPromptFirst, StarvationGuard
from kvlab.schedulers.preemption import RecomputePreemption, SwapPreemption
from kvlab.schedulers.request import Request, RequestStatus, SamplingParams

__all__ = ["FCFS", "ChunkedScheduler", "ContinuousScheduler", "IterationScheduler", "LongestPrefixMatch",
           "OptimisticAdmission", "PersistentScheduler", "Priority", "RecomputePreemption", "Request",
           "RequestStatus", "ReserveAdmission", "SamplingParams", "ScheduledSeq", "Scheduler",
           "ShortestPromptFirst", "StarvationGuard", "StaticBatchAdmission", "StepOutput", "StepPlan",
           "SwapPreemption"]
