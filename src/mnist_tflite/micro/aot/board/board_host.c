/* The harness's board functions on the host (a normal process): stdout, exit, no clock. */
#include <stdio.h>
#include <stdlib.h>

#include "board.h"

void board_init(void) {}

void board_write(const char *text)
{
    fputs(text, stdout);
}

void board_exit(int status)
{
    fflush(stdout);
    exit(status);
}

uint32_t board_ticks(void)
{
    return 0;
}

uint32_t board_ticks_mask(void)
{
    return 0;
}

void board_paint_stack(void) {}

uint32_t board_stack_used(uintptr_t sp)
{
    (void)sp;
    return 0;
}

uintptr_t board_sp(void)
{
    return 0;
}

static FILE *files[8];

int board_open(const char *path)
{
    for (int i = 0; i < 8; i++) {
        if (!files[i]) {
            files[i] = fopen(path, "rb");
            return files[i] ? i : -1;
        }
    }
    return -1;
}

int board_read(int handle, void *dst, uint32_t n)
{
    return fread(dst, 1, n, files[handle]) == n ? 0 : -1;
}

void board_spin(uint32_t n)
{
    (void)n;
}
