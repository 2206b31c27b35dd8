"""Running on many processes and surviving a crash: the one checkpointing module (`checkpoint`), FSDP2 sharding
(`sharding`), the Lightning strategy and checkpoint plugin (`strategy`), and the check that ranks agree
(`rank_agreement`)."""
