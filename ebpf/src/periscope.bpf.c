/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* The periscope kernel object: one translation unit, one file per concern. */
#include "socket_io.h"
#include "process.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";
