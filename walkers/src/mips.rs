//! MIPS VZ GPA table walker (to be written).
