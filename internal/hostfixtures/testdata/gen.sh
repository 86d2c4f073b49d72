#!/usr/bin/env bash
# Regenerates the host fixture trees (sysfs layouts of real servers) in this directory:
#   intel/  2-socket Xeon, 4 CPUs shown: intel_pstate, coretemp, intel-rapl package+dram,
#           NVMe and PSU (pmbus) hwmon chips, a PSU sensor that fails to read, a RAPL counter
#           about to wrap.
#   amd/    EPYC, 8 CPUs shown: acpi-cpufreq, k10temp, AMD RAPL (package + core), NVMe.
#   big/    2-socket Xeon with 192 logical CPUs (48 cores x 2 threads x 2 sockets).
# Values are the ones real machines show; the trees are committed, this script documents how.
# Usage: ./gen.sh   (from anywhere; it writes next to itself)
set -euo pipefail
cd "$(dirname "$0")"

w() { mkdir -p "$(dirname "$1")"; printf '%s\n' "$2" >"$1"; }

# cpu TREE N PKG CORE DRIVER CUR: one logical CPU with its own cpufreq policy, as intel_pstate
# and acpi-cpufreq on servers lay it out (cpuN/cpufreq is a link to ../cpufreq/policyN).
cpu() {
	local t=$1 n=$2 pkg=$3 core=$4 driver=$5 cur=$6 siblings=$7 cores=$8
	local c=$t/sys/devices/system/cpu/cpu$n p=$t/sys/devices/system/cpu/cpufreq/policy$n
	[ "$n" = 0 ] || w "$c/online" 1
	w "$c/topology/physical_package_id" "$pkg"
	w "$c/topology/core_id" "$core"
	w "$c/topology/thread_siblings_list" "$siblings"
	w "$c/topology/core_siblings_list" "$cores"
	mkdir -p "$p"
	ln -sfn "../cpufreq/policy$n" "$c/cpufreq"
	w "$p/affected_cpus" "$n"
	w "$p/related_cpus" "$n"
	w "$p/scaling_driver" "$driver"
	w "$p/scaling_cur_freq" "$cur"
	case $driver in
	intel_pstate)
		w "$p/cpuinfo_min_freq" 800000
		w "$p/cpuinfo_max_freq" 3800000
		w "$p/cpuinfo_transition_latency" 0
		w "$p/scaling_min_freq" 800000
		w "$p/scaling_max_freq" 3800000
		w "$p/scaling_governor" powersave
		w "$p/scaling_available_governors" "performance powersave"
		w "$p/scaling_setspeed" "<unsupported>"
		w "$p/energy_performance_preference" balance_performance
		w "$p/energy_performance_available_preferences" "default performance balance_performance balance_power power"
		w "$c/thermal_throttle/core_throttle_count" $((n * 3))
		w "$c/thermal_throttle/core_throttle_max_time_ms" 12
		w "$c/thermal_throttle/core_throttle_total_time_ms" $((n * 40))
		w "$c/thermal_throttle/package_throttle_count" $((pkg * 7 + 2))
		w "$c/thermal_throttle/package_throttle_max_time_ms" 30
		w "$c/thermal_throttle/package_throttle_total_time_ms" 210
		;;
	acpi-cpufreq)
		w "$p/cpuinfo_min_freq" 1500000
		w "$p/cpuinfo_max_freq" 2450000
		w "$p/cpuinfo_cur_freq" "$((cur + 1000))"
		w "$p/cpuinfo_transition_latency" 0
		w "$p/scaling_min_freq" 1500000
		w "$p/scaling_max_freq" 2450000
		w "$p/scaling_governor" schedutil
		w "$p/scaling_available_governors" "conservative ondemand userspace powersave performance schedutil"
		w "$p/scaling_available_frequencies" "2450000 2000000 1500000"
		w "$p/scaling_setspeed" "<unsupported>"
		;;
	esac
}

cpus_common() {
	local t=$1 last=$2
	w "$t/sys/devices/system/cpu/online" "0-$last"
	w "$t/sys/devices/system/cpu/possible" "0-$last"
	w "$t/sys/devices/system/cpu/present" "0-$last"
	w "$t/sys/devices/system/cpu/offline" ""
}

# zone TREE N TYPE TEMP [TRIP_TEMP TRIP_TYPE]...
zone() {
	local t=$1 n=$2 type=$3 temp=$4
	shift 4
	local z=$t/sys/class/thermal/thermal_zone$n
	w "$z/type" "$type"
	w "$z/temp" "$temp"
	w "$z/policy" step_wise
	w "$z/mode" enabled
	local i=0
	while [ $# -gt 0 ]; do
		w "$z/trip_point_${i}_temp" "$1"
		w "$z/trip_point_${i}_type" "$2"
		shift 2
		i=$((i + 1))
	done
}

cooling() {
	local d=$1/sys/class/thermal/cooling_device$2
	w "$d/type" "$3"
	w "$d/cur_state" "$4"
	w "$d/max_state" "$5"
}

# hwmon TREE N NAME DEVICE_TARGET: the class link points at the device's hwmon directory, and
# the chip's device link at its parent device, as the kernel lays it out.
hwmon() {
	local t=$1 n=$2 name=$3 dev=$4
	local d=$t/sys/devices/$dev/hwmon/hwmon$n
	w "$d/name" "$name"
	ln -sfn "../../../$(basename "$dev")" "$d/device"
	mkdir -p "$t/sys/class/hwmon"
	ln -sfn "../../devices/$dev/hwmon/hwmon$n" "$t/sys/class/hwmon/hwmon$n"
	HW=$d
}

rapl() {
	local z=$1/sys/class/powercap/$2
	w "$z/name" "$3"
	w "$z/energy_uj" "$4"
	w "$z/max_energy_range_uj" "$5"
	w "$z/enabled" 1
}

constraint() {
	local z=$1/sys/class/powercap/$2
	w "$z/constraint_$3_name" "$4"
	w "$z/constraint_$3_power_limit_uw" "$5"
	w "$z/constraint_$3_time_window_us" "$6"
	w "$z/constraint_$3_max_power_uw" "$7"
}

coretemp() {
	local t=$1 n=$2 pkg=$3 cores=$4 base=$5
	hwmon "$t" "$n" coretemp "platform/coretemp.$pkg"
	w "$HW/temp1_label" "Package id $pkg"
	w "$HW/temp1_input" "$base"
	w "$HW/temp1_max" 91000
	w "$HW/temp1_crit" 101000
	w "$HW/temp1_crit_alarm" 0
	local c
	for ((c = 0; c < cores; c++)); do
		local s=$((c + 2))
		w "$HW/temp${s}_label" "Core $c"
		w "$HW/temp${s}_input" $((base - 3000 + (c % 5) * 1000))
		w "$HW/temp${s}_max" 91000
		w "$HW/temp${s}_crit" 101000
		w "$HW/temp${s}_crit_alarm" 0
	done
}

nvme() {
	local t=$1 n=$2 ctrl=$3 pci=$4
	hwmon "$t" "$n" nvme "pci0000:00/$pci/nvme/$ctrl"
	w "$HW/temp1_label" Composite
	w "$HW/temp1_input" 38850
	w "$HW/temp1_min" -273150
	w "$HW/temp1_max" 81850
	w "$HW/temp1_crit" 84850
	w "$HW/temp1_alarm" 0
	w "$HW/temp2_label" "Sensor 1"
	w "$HW/temp2_input" 38850
	w "$HW/temp2_min" -273150
	w "$HW/temp2_max" 65261850
}

rm -rf intel amd big

# --- Intel server: 2 sockets, 2 CPUs shown per socket -------------------------------------
t=intel
cpus_common $t 3
cpu $t 0 0 0 intel_pstate 2300000 0 0-1
cpu $t 1 0 1 intel_pstate 3100000 1 0-1
cpu $t 2 1 0 intel_pstate 800000 2 2-3
cpu $t 3 1 1 intel_pstate 1200000 3 2-3
zone $t 0 acpitz 27800 105000 critical
zone $t 1 x86_pkg_temp 52000 0 passive 0 passive
zone $t 2 x86_pkg_temp 49000 0 passive 0 passive
for i in 0 1 2 3; do cooling $t $i Processor 0 3; done
cooling $t 4 intel_powerclamp -1 50
hwmon $t 0 acpitz "LNXSYSTM:00/LNXSYBUS:00/LNXTHERM:00"
w "$HW/temp1_input" 27800
w "$HW/temp1_crit" 105000
coretemp $t 1 0 2 52000
coretemp $t 2 1 2 49000
nvme $t 3 nvme0 0000:00:17.0
# A Delta DPS-460 PSU through PMBus: input and output voltage, current and power, its fan, two
# temperatures; temp3 stands for a sensor that fails every read (the file is a directory, so
# read(2) fails with EISDIR; unit tests inject EIO and ENODATA through the reader seam).
hwmon $t 4 dps460 "pci0000:00/0000:00:1f.4/i2c-7/7-0058"
w "$HW/in1_label" vin
w "$HW/in1_input" 230250
w "$HW/in1_lcrit" 90000
w "$HW/in1_crit" 264000
w "$HW/in1_min_alarm" 0
w "$HW/in2_label" vout1
w "$HW/in2_input" 12102
w "$HW/in2_crit" 13500
w "$HW/curr1_label" iin
w "$HW/curr1_input" 1790
w "$HW/curr1_max" 4200
w "$HW/curr2_label" iout1
w "$HW/curr2_input" 30500
w "$HW/curr2_max" 38000
w "$HW/curr2_max_alarm" 0
w "$HW/power1_label" pin
w "$HW/power1_input" 411000000
w "$HW/power1_alarm" 0
w "$HW/power2_label" pout1
w "$HW/power2_input" 369000000
w "$HW/power2_cap" 460000000
w "$HW/fan1_input" 5120
w "$HW/fan1_alarm" 0
w "$HW/temp1_input" 31000
w "$HW/temp1_max" 60000
w "$HW/temp2_input" 37500
mkdir -p "$HW/temp3_input" && : >"$HW/temp3_input/.keep"
w "$HW/temp3_label" hotspot
w intel/sys/class/powercap/intel-rapl/enabled 1
rapl $t intel-rapl:0 package-0 123456789012 262143328850
constraint $t intel-rapl:0 0 long_term 205000000 999424 205000000
constraint $t intel-rapl:0 1 short_term 246000000 2440 478000000
rapl $t intel-rapl:0:0 dram 23456789012 65712999613
constraint $t intel-rapl:0:0 0 long_term 0 976 0
# package-1's counter is 300 J short of its range: the next reading wraps.
rapl $t intel-rapl:1 package-1 261843328850 262143328850
constraint $t intel-rapl:1 0 long_term 205000000 999424 205000000
constraint $t intel-rapl:1 1 short_term 246000000 2440 478000000
rapl $t intel-rapl:1:0 dram 22222222222 65712999613
constraint $t intel-rapl:1:0 0 long_term 0 976 0

# --- AMD EPYC: 4 cores x 2 threads shown, acpi-cpufreq, k10temp, AMD RAPL --------------------
t=amd
cpus_common $t 7
for n in 0 1 2 3 4 5 6 7; do
	core=$((n % 4))
	cpu $t $n 0 $core acpi-cpufreq $((1500000 + (n % 3) * 475000)) "$core,$((core + 4))" 0-7
done
hwmon $t 0 k10temp "pci0000:00/0000:00:18.3"
w "$HW/temp1_label" Tctl
w "$HW/temp1_input" 45500
w "$HW/temp3_label" Tccd1
w "$HW/temp3_input" 41250
w "$HW/temp4_label" Tccd2
w "$HW/temp4_input" 42000
nvme $t 1 nvme0 0000:40:03.1
w amd/sys/class/powercap/intel-rapl/enabled 1
rapl $t intel-rapl:0 package-0 98765432109 65712999613
rapl $t intel-rapl:0:0 core 3456789012 65712999613

# --- 192 logical CPUs: 2 sockets x 48 cores x 2 threads ------------------------------------
t=big
cpus_common $t 191
for ((n = 0; n < 192; n++)); do
	pkg=$(((n / 48) % 2))
	core=$((n % 48))
	sib=$(((n % 96) + pkg * 0))
	cpu $t $n $pkg $core intel_pstate $((2000000 + (n % 7) * 100000)) "$((n % 96)),$((n % 96 + 96))" "$((pkg * 48))-$((pkg * 48 + 47)),$((pkg * 48 + 96))-$((pkg * 48 + 143))"
done
zone $t 0 x86_pkg_temp 61000 0 passive 0 passive
zone $t 1 x86_pkg_temp 58000 0 passive 0 passive
cooling $t 0 intel_powerclamp -1 50
coretemp $t 0 0 48 61000
coretemp $t 1 1 48 58000
nvme $t 2 nvme0 0000:00:17.0
w big/sys/class/powercap/intel-rapl/enabled 1
rapl $t intel-rapl:0 package-0 123456789012 262143328850
constraint $t intel-rapl:0 0 long_term 350000000 999424 350000000
rapl $t intel-rapl:0:0 dram 23456789012 65712999613
rapl $t intel-rapl:1 package-1 133456789012 262143328850
constraint $t intel-rapl:1 0 long_term 350000000 999424 350000000
rapl $t intel-rapl:1:0 dram 21456789012 65712999613
