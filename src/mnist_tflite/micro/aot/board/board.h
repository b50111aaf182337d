/* The test harness's view of the machine it runs on (a QEMU Cortex-M board, or the host).
 * Part of the harness written by `mnist-tflite compile`, not of the model's code. */
#ifndef BOARD_H
#define BOARD_H

#include <stdint.h>

void board_init(void);
void board_write(const char *text);       /* to the console (semihosting on the board) */
void board_exit(int status);              /* stop the program (and QEMU) */
uint32_t board_ticks(void);               /* a counter that goes up; 0 where there is none */
uint32_t board_ticks_mask(void);          /* its width: elapsed = (b - a) & mask */
void board_paint_stack(void);             /* fill the unused stack with a pattern */
uint32_t board_stack_used(uintptr_t sp);  /* bytes below sp written since the paint */
uintptr_t board_sp(void);                 /* the caller's stack pointer (0 on the host) */
int board_open(const char *path);         /* a host file for reading (semihosting): handle, or -1 */
int board_read(int handle, void *dst, uint32_t n); /* the next n bytes; 0, or -1 if short */
void board_spin(uint32_t n);              /* about 2 n instructions: calibrates board_ticks */

#endif
