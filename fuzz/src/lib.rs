//! Fuzz support for tdp: the cargo-fuzz targets (operation sequences against the model, arbitrary
//! entry decoding) and their stable-toolchain corpus replay come with the fuzzing issue. Until
//! then the model property tests in `tdp-core/tests` and `arch-x86/tests` play that role.
