/* Start-up code for the test firmware on QEMU's Cortex-M boards (microbit M0, mps2-an385 M3,
 * mps2-an386 M4, mps2-an505 M33, mps3-an547 M55): the vector table, the reset handler (which
 * also turns on the FPU/MVE coprocessors where the core has them), console, file input and
 * exit over semihosting, SysTick as the instruction clock, and stack painting. The same file
 * serves every core: only ARMv6-M instructions, plus the CPACR write on cores with CP10/CP11.
 * Written for `mnist-tflite compile`; no CMSIS. */
#include <stddef.h>
#include <stdint.h>

#include "board.h"

extern uint32_t __data_load, __data_start, __data_end, __bss_start, __bss_end;
extern uint32_t __stack_limit, __stack_top;
int main(void);

#define STACK_PAINT 0xDEADBEEFu
#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define CPACR (*(volatile uint32_t *)0xE000ED88u)

/* ARM semihosting: operation in r0, argument in r1, BKPT 0xAB traps to the debugger (QEMU). */
static int semihost(int op, const void *arg)
{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void board_write(const char *text)
{
    semihost(0x04, text); /* SYS_WRITE0 */
}

void board_exit(int status)
{
    /* SYS_EXIT: ADP_Stopped_ApplicationExit (QEMU exits 0) or RunTimeErrorUnknown (exits 1) */
    semihost(0x18, (const void *)(uintptr_t)(status == 0 ? 0x20026u : 0x20023u));
    for (;;) {
    }
}

int board_open(const char *path)
{
    uint32_t n = 0;
    while (path[n]) {
        n++;
    }
    const uint32_t args[3] = {(uint32_t)(uintptr_t)path, 1u /* "rb" */, n};
    return semihost(0x01, args); /* SYS_OPEN: a handle, or -1 */
}

int board_read(int handle, void *dst, uint32_t n)
{
    const uint32_t args[3] = {(uint32_t)handle, (uint32_t)(uintptr_t)dst, n};
    return semihost(0x06, args) == 0 ? 0 : -1; /* SYS_READ: the bytes it did not read */
}

/* 2 n + a few instructions: a SUBS/BNE loop that lets the harness check board_ticks' rate. */
__attribute__((noinline)) void board_spin(uint32_t n)
{
    __asm__ volatile(".syntax unified\n1:\tsubs %0, %0, #1\n\tbne 1b" : "+l"(n));
}

void board_init(void)
{
    SYST_RVR = 0x00FFFFFFu;
    SYST_CVR = 0;
    SYST_CSR = 5u; /* enable, processor clock, no interrupt */
}

uint32_t board_ticks(void)
{
    return 0x00FFFFFFu - SYST_CVR; /* SysTick counts down */
}

uint32_t board_ticks_mask(void)
{
    return 0x00FFFFFFu;
}

uintptr_t board_sp(void)
{
    uintptr_t sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    return sp;
}

__attribute__((noinline)) void board_paint_stack(void)
{
    uint32_t *p = &__stack_limit;
    uint32_t *end = (uint32_t *)(board_sp() - 64);
    while (p < end) {
        *p++ = STACK_PAINT;
    }
}

uint32_t board_stack_used(uintptr_t sp)
{
    const uint32_t *p = &__stack_limit;
    while (p < (const uint32_t *)sp && *p == STACK_PAINT) {
        p++;
    }
    return (uint32_t)(sp - (uintptr_t)p);
}

/* The C library functions a compiler may call on its own; the firmware links no libc. */
void *memcpy(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    while (n--) {
        *d++ = *s++;
    }
    return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    if (d < s) {
        while (n--) {
            *d++ = *s++;
        }
    } else {
        while (n--) {
            d[n] = s[n];
        }
    }
    return dst;
}

void *memset(void *dst, int c, size_t n)
{
    uint8_t *d = dst;
    while (n--) {
        *d++ = (uint8_t)c;
    }
    return dst;
}

void Reset_Handler(void)
{
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
    CPACR |= 0xFu << 20; /* CP10 and CP11 (FPU and MVE) full access, before any of their code */
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
    uint32_t *src = &__data_load, *dst = &__data_start;
    while (dst < &__data_end) {
        *dst++ = *src++;
    }
    for (dst = &__bss_start; dst < &__bss_end; dst++) {
        *dst = 0;
    }
    board_exit(main());
}

static void Fault_Handler(void)
{
    board_write("fault\n");
    board_exit(1);
}

__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))(uintptr_t)&__stack_top, /* initial stack pointer */
    Reset_Handler,
    Fault_Handler, /* NMI */
    Fault_Handler, /* HardFault */
    Fault_Handler, /* MemManage */
    Fault_Handler, /* BusFault */
    Fault_Handler, /* UsageFault */
    0, 0, 0, 0,
    Fault_Handler, /* SVCall */
    Fault_Handler, /* DebugMon */
    0,
    Fault_Handler, /* PendSV */
    Fault_Handler, /* SysTick */
};
