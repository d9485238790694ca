//! Arm VMSAv8-64 stage-2 walker (to be written).
