//! RISC-V G-stage walker (to be written).
