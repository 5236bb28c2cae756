//! Chat formatting (BitNet 2B-4T template): System/User/Assistant turns.
