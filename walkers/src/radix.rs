//! Power Book3S-64 radix partition-scoped walker (to be written).
