//! LoongArch GPA table walker (to be written).
