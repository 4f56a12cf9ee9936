"""Environment adapters (MetaWorld, LIBERO, ManiSkill) on gymnasium's vector API, with action chunks. No policy code."""
