"""Schedulers: which sequences run each step, and how many tokens each computes."""

from kvlab.schedulers.admission import OptimisticAdmission, ReserveAdmission, StaticBatchAdmission
from kvlab.schedulers.base import ScheduledSeq, Scheduler, StepOutput, StepPlan, StepTable
from kvlab.schedulers.chunked import ChunkedScheduler
from kvlab.schedulers.continuous import ContinuousScheduler
from kvlab.schedulers.iteration import IterationScheduler
from kvlab.schedulers.persistent import PersistentScheduler
from kvlab.schedulers.policies import FCFS, LongestPrefixMatch, Priority, ShortestPromptFirst, StarvationGuard
from kvlab.schedulers.preemption import Preempted, RecomputePreemption, SwapPreemption
from kvlab.schedulers.request import Request, RequestStatus, SamplingParams
from kvlab.schedulers.shapes import BucketedShapes, FixedShapes, StepShape
from kvlab.schedulers.stopping import OutputText, check_stop

__all__ = ["FCFS", "BucketedShapes", "ChunkedScheduler", "ContinuousScheduler", "FixedShapes",
           "IterationScheduler", "LongestPrefixMatch", "OptimisticAdmission", "OutputText",
           "PersistentScheduler", "Preempted", "Priority", "RecomputePreemption", "Request",
           "RequestStatus", "ReserveAdmission", "SamplingParams", "ScheduledSeq", "Scheduler",
           "ShortestPromptFirst", "StarvationGuard", "StaticBatchAdmission", "StepOutput", "StepPlan",
           "StepShape", "StepTable", "SwapPreemption", "check_stop"]
