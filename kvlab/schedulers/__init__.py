"""Schedulers: which sequences run each step, and how many tokens each computes."""

from kvlab.schedulers.base import ScheduledSeq, Scheduler, StepOutput, StepPlan
from kvlab.schedulers.continuous import ContinuousScheduler
from kvlab.schedulers.policies import FCFS
from kvlab.schedulers.request import Request, RequestStatus, SamplingParams

__all__ = ["FCFS", "ContinuousScheduler", "Request", "RequestStatus", "SamplingParams",
           "ScheduledSeq", "Scheduler", "StepOutput", "StepPlan"]
