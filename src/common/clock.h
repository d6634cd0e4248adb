/* clock.h — time in seconds, as a double, for stats lines and benchmarks.
 *
 * Wall-clock intervals use the monotonic clock (never jumps with the date).
 * Benchmarks of one thread's work use that thread's CPU time: the machines
 * they run on are often shared, and time spent descheduled is not the
 * code's. Process CPU time (all threads) against wall time says what share
 * of the cores a multi-threaded run actually got. */
#ifndef DS4_CLOCK_H
#define DS4_CLOCK_H

double ds4_now(void);
double ds4_thread_cpu_now(void);
double ds4_process_cpu_now(void);

#endif
